"""A Processor whose setup() always raises (its model file is missing): every child fails to boot."""

import xq

app = xq.App("setupfail")


@app.task
class Thumbnailer(xq.Processor):
    name = "thumb"
    queue = "setupq"

    def setup(self):
        raise FileNotFoundError("model.bin is missing")

    def process(self, payload):
        return payload


@app.task("other", queue="elsewhere")
class Elsewhere(xq.Processor):
    """On a queue the test does not serve: its setup() must not run at child start."""

    def setup(self):
        raise RuntimeError("should not be set up: its queue is not served")

    def process(self, payload):
        return payload
