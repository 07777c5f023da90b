"""Reading news titles for the prompt: what a Chinese headline contributes in English.

The prompt builder (`covergen.prompts`) asks, in order:

    glossary (styles/glossary.yaml, curated, wins)
      -> landmarks (styles/landmarks.yaml: places and things that need a picture, not a word)
      -> dictionary (CC-CEDICT, a concrete paintable sense per jieba word) or a local translator
      -> the style's template

and the tone guard (styles/tone.yaml) decides whether a title is sensitive enough to be painted
with the restrained neutral template. Modules: `script` (traditional -> simplified), `dictionary`,
`landmarks`, `reader` (segmentation, part of speech, ranking), `tone`, `translator`.
"""
