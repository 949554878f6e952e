"""The room assistants: asking them, running their replies, stopping them.

Inside:
- ``ask``: who may ask, rate limits and budgets, starting requests (the entry
  points the transports call: ``message_send_asking``, ``reply_regenerate``,
  ``catchup``, ``background_ensure``);
- ``services``: the writes (requests, their turn, replies to their end);
- ``prompt``: what the model is shown (through ``rooms.selectors``);
- ``worker``: a request's life, and the sweeper of dead processes' replies;
- ``stream``: coalescing, checkpoints, the registry of running replies;
- ``cancel``: Stop, from any process;
- ``budget``: prices, usage and budgets;
- ``provider``: the only module that imports ``openai`` (and the demo).

Dependencies point one way: ``ask`` -> ``worker``/``cancel`` -> ``stream``,
``prompt`` -> ``services``/``budget``/``provider`` -> ``rooms`` core modules.
"""
