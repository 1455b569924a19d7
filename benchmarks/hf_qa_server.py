"""The baseline of benchmarks/serve_load.py: what a user would write by hand, the Hugging Face
question-answering pipeline behind FastAPI, one request at a time.

    python benchmarks/hf_qa_server.py --model HF_FOLDER --port 8001 [--device cuda]

Same route and body as ``bertrt serve`` (``POST /v1/qa {"question", "context"}``), same framework
and server (FastAPI on uvicorn), fp16 on CUDA and fp32 on the CPU. Transformers 5 dropped the
question-answering pipeline; there the same steps are written out as its model docs show them
(tokenizer with overflowing 384-token windows at stride 128, ``AutoModelForQuestionAnswering``,
the best start/end pair across windows).
"""

import argparse
import threading


def make_app(model: str, device: str):
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    cuda = device.startswith("cuda")
    try:
        qa = pipeline("question-answering", model=model, tokenizer=model, device=0 if cuda else -1,
                      dtype=torch.float16 if cuda else torch.float32)
    except KeyError:  # transformers >= 5: no such pipeline
        qa = _by_hand(model, torch.device(device), torch.float16 if cuda else torch.float32)
    lock = threading.Lock()  # the pipeline is not made for concurrent calls
    app = FastAPI()

    class Ask(BaseModel):
        question: str
        context: str

    @app.get("/ready")
    def ready():
        return {"status": "ready"}

    @app.post("/v1/qa")
    def answer(body: Ask):
        with lock:
            out = qa(question=body.question, context=body.context)
        return {"answer": out["answer"], "score": float(out["score"]), "start": out["start"], "end": out["end"]}

    return app


def _by_hand(model: str, device, dtype, max_length: int = 384, stride: int = 128, max_answer: int = 30):
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    net = AutoModelForQuestionAnswering.from_pretrained(model, dtype=dtype).to(device).eval()

    def answer(question: str, context: str) -> dict:
        enc = tokenizer(question, context, truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=True,
                        return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        enc.pop("overflow_to_sample_mapping", None)
        with torch.inference_mode():
            out = net(**{k: v.to(device) for k, v in enc.items()})
        best = (float("-inf"), 0, 0, 0)
        for w in range(len(offsets)):
            context_tokens = torch.tensor([s == 1 for s in enc.sequence_ids(w)])
            start = out.start_logits[w].float().cpu().masked_fill(~context_tokens, float("-inf"))
            end = out.end_logits[w].float().cpu().masked_fill(~context_tokens, float("-inf"))
            gap = torch.arange(len(end))[None, :] - torch.arange(len(start))[:, None]  # end - start
            scores = (start[:, None] + end[None, :]).masked_fill((gap < 0) | (gap >= max_answer), float("-inf"))
            i = int(scores.argmax())
            s, e = divmod(i, scores.shape[1])
            if scores[s, e] > best[0]:
                best = (float(scores[s, e]), w, s, e)
        score, w, s, e = best
        start_char, end_char = int(offsets[w][s][0]), int(offsets[w][e][1])
        return {"answer": context[start_char:end_char], "score": score, "start": start_char, "end": end_char}

    return lambda question, context: answer(question, context)


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    uvicorn.run(make_app(args.model, args.device), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
