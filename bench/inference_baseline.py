"""The baseline of bench/inference.py: FastAPI calling a transformers text-classification pipeline per
request, the way a first prediction service is usually written. BASELINE_MODEL_DIR holds the merged model."""

import os
import time

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

# BASELINE_DEVICE: -1 the CPU, 0 the first GPU
classifier = pipeline(
    "text-classification",
    model=os.environ["BASELINE_MODEL_DIR"],
    device=int(os.environ.get("BASELINE_DEVICE", "-1")),
)
app = FastAPI()


class Body(BaseModel):
    text: str


@app.post("/predict")
def predict(body: Body) -> dict:
    started = time.perf_counter()
    result = classifier(body.text)[0]
    return {
        "label_name": result["label"],
        "probability": result["score"],
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
