"""The generation engine: one worker thread owns the pipeline and runs batches of covers.

`lora_layers` applies a different adapter stack to each sample of a batch, `denoise` runs one
batch through text encoder, UNet and VAE, `batcher` groups queued requests into batches,
`speedups` applies the speed settings to the pipeline and builds the Denoiser.
"""
