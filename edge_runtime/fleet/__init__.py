"""Fleet model updates over MQTT 5, the bulk optionally from HTTP(S) mirrors (docs/fleet.md).

release.py  signed release records        protocol.py  topics and messages
chunks.py   hashed chunks, resumable file  fetch.py     the device's chunk request loop
state.py    the persisted update state     agent.py     the device update agent
selftest.py golden examples + latency      probation.py escalation/error rate vs the previous model
rollout.py  canary choice, promote/halt    manager.py   the fleet manager (publish, serve, status)
access.py   who may fetch which chunks    fleetdir.py  the manager's releases and rollouts on disk
registry.py the enrolled devices and their groups (the manager decides membership, never a device)
http_fetch.py chunks from HTTP(S) mirrors mirror.py    lays archives out for mirrors (fleet mirror sync)
mirror_access.py the device's TLS trust and per-origin credentials for private mirrors
"""
