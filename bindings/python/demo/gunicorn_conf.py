# Shares ratekeeper's limits across all workers (creates the file in the
# master, attaches in each worker after fork, frees dead workers' permits):
from ratekeeper.gunicorn import *  # noqa: F401,F403

workers = 4
bind = "127.0.0.1:0"  # a free port; run_demo.py reads it from the log
graceful_timeout = 5
