"""covergen on Ray Serve: a CPU ingress (the normal covergen gRPC server) in front of GPU painter
replicas multiplexed by adapter stack. Needs the `covergen[ray]` extra.

    painter.py   the painter deployment: base model + adapter registry + engine per replica
    client.py    ServePainter: the ingress's Painter over a painter deployment handle
    ingress.py   the ingress deployment: covergen's servicers, health and reflection on one port
    app.py       the Serve application (`serve run` / `serve deploy` import path) and its options
    cli.py       `covergen-ray` (make serve-ray): a local Ray cluster, the app, drain on SIGTERM
"""
