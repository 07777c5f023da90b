"""The training studio: a web page over the trainer for content-operations staff.

Pictures in, a published, previewed style out: `/datasets` (upload, captions, lint), `/train`
(the same `TrainConfig` as `covergen-train`), `/jobs/<id>` (a persisted queue running
`covergen-train` subprocesses), `/preview` and publish/rollback against a running covergen server.
It is build-side code: the server package never imports it.
"""
