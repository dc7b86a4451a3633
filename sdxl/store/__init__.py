"""Where the server keeps what outlives a request, for every API and the engine's shared queue:

- `store.Store`: the whole, opened once (upgrading an older database in place);
- `db`: the database (SQLite or PostgreSQL), transactions, outages as StoreUnavailable;
- `tables`: the schema; `upgrade`: older schemas made current, their bytes moved out;
- `predictions`: created, claimed in the tenants' turns, ended with their outputs, cancelled;
- `trainings`: the same for trainings, with their progress and latest checkpoint, handed back
  (never failed) when their replica stops; `destinations`: the models they add versions to;
- `files`: uploads and OpenAI's url images; `blobs`: the files backend their bytes are in;
- `replicas`: heartbeats and the claims of replicas that stopped; `expiry`: TTL and bounds;
- `wake`: LISTEN/NOTIFY (PostgreSQL) or this process's commits (SQLite), instead of polling.
"""
