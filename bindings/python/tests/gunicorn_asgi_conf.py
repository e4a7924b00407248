# test_asgi.py: gunicorn with uvicorn's worker class and the same one line
# that shares limits across workers.
from ratekeeper.gunicorn import *  # noqa: F401,F403

worker_class = "uvicorn_worker.UvicornWorker"
workers = 4
bind = "127.0.0.1:0"
graceful_timeout = 5
