"""Feed-time serving (issue 16): covers within a caller's budget, fallbacks, covers prepared ahead
of readers over a Redis Stream, and the regional-versus-generic A/B arms.

    arms.py       which arm a unit is in (salted hash, sticky across calls and replicas)
    health.py     which styles cannot be used now and why (ListStyles, fallbacks, one warning)
    standing.py   one in-memory cover per style, rendered at start-up and on reload
    fallbacks.py  the best cover held now for a request: broader cached level, standing covers
    budget.py     FeedCovers: GenerateCover with a budget, background completions
    stream.py     PrepareStream: the Redis Stream, consumer group and dead-letter stream
    prepare.py    CoverPreparer: PrepareCovers (resolve, group, skip cached, queue)
    consumer.py   PrepareConsumer: takes prepare jobs when the engine has spare capacity
"""
