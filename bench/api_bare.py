"""The baseline of bench/api.py: a bare FastAPI app with one no-op route, served the same way."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/noop")
def noop() -> dict[str, str]:
    return {"status": "ok"}
