"""Where the server keeps what outlives a request, for the job runtime and every API:

- `store.Store`: the whole, opened once (upgrading an older database in place);
- `db`: the database (SQLite or PostgreSQL), transactions, outages as StoreUnavailable;
- `tables`: the schema; `upgrade`: older schemas made current, their bytes moved out;
- `job_rows`: what stored predictions and trainings share: created, claimed in the tenants' turns,
  started, cancelled, ended; the wake-up channels (JOBS, CANCELS, ENDS) and `Turn`;
- `prediction_rows`: predictions, with the queued caps, their outputs and latest preview;
- `training_rows`: trainings, with their progress and latest checkpoint, handed back (never
  failed) when their replica stops; `destinations`: the models they add versions to;
- `limits`: what the store keeps (TTL, bounds, queued caps);
- `files`: uploads and OpenAI's url images; `blobs`: the files backend their bytes are in;
- `replica_rows`: heartbeats and the claims of replicas that stopped; `expiry`: TTL and bounds;
- `wake`: LISTEN/NOTIFY (PostgreSQL) or this process's commits (SQLite), instead of polling.
"""
