"""The Flask app of benches/uwsgi_bench.py: one route, `/`, that answers
"hello". With $BENCH_FLASK_LIMIT set, the route is limited by the Flask
extension (ratekeeper.flask, on the shared file of $RATEKEEPER_SHARED_PATH,
key: the client address); otherwise it has no limiter of its own (the
plugin, when loaded, limits it in uWSGI's router)."""
import os

from flask import Flask

app = Flask(__name__)

spec = os.environ.get("BENCH_FLASK_LIMIT")
if spec:
    from ratekeeper.flask import Ratekeeper

    rk = Ratekeeper(app)

    @app.route("/")
    @rk.limit(spec, name="bench")
    def hello():
        return "hello\n"

else:

    @app.route("/")
    def hello():
        return "hello\n"


application = app
