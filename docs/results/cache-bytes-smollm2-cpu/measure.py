"""Disk bytes per document token, and answers in memory vs reloaded from disk, over the public API
(runs on whichever actqkv_llm is on PYTHONPATH).

usage: measure.py CACHE_DIR OUT.json real TEXT_FILE | passkey SAMPLES.json"""
import json, shutil, sys, tempfile, time
from pathlib import Path

import torch
import actqkv_llm
from actqkv_llm import Engine
from actqkv_llm.persist.format import FORMAT_VERSION

cache_dir, out_path, kind, source = sys.argv[1:5]
torch.set_num_threads(2)
eng = Engine.default(progress=False, cache=False, cache_dir=cache_dir)
work = Path(tempfile.mkdtemp(prefix="wt14-docs-", dir="/tmp"))
result = {"code": actqkv_llm.__file__, "format_version": FORMAT_VERSION, "dtype": str(eng.dtype),
          "method": eng.config.method, "threads": torch.get_num_threads(), "records": []}


def saved(doc, name, **kw):
    p = doc.save(work / name, **kw)
    files = {f.name: f.stat().st_size for f in p.iterdir()}
    return p, {"files": files, "bytes": sum(files.values()), "bytes_per_token": sum(files.values()) / doc.n_tokens}


try:
    if kind == "real":
        t0 = time.perf_counter()
        doc = eng.prefill(Path(source).read_text(), progress=False)
        rec = {"tokens": doc.n_tokens, "prefill_s": round(time.perf_counter() - t0, 1)}
        p, rec["disk"] = saved(doc, "real")
        q = "Who is the author of this document?"
        rec["answer_memory"] = eng.ask(doc, q, max_new_tokens=16)
        rec["answer_reloaded"] = eng.ask(eng.load(p), q, max_new_tokens=16)
        result["records"].append(rec)
    else:
        for s in json.load(open(source)):
            doc = eng.prefill(s["document"], chat=False, progress=False)
            gen = lambda d: eng.generate(d, s["continuation"], max_new_tokens=s["max_new_tokens"], temperature=0.0)  # noqa: E731
            rec = {"depth": s["depth"], "expected": s["expected"], "tokens": doc.n_tokens, "memory": gen(doc)}
            p, rec["disk"] = saved(doc, f"d{s['depth']}")
            rec["reloaded"] = gen(eng.load(p))
            if FORMAT_VERSION >= 2:  # KV kept in the compute dtype (fp32), as format 1 stored it
                p32, rec["disk_compute"] = saved(doc, f"d{s['depth']}-fp32", kv_dtype="compute")
                rec["reloaded_compute"] = gen(eng.load(p32))
            result["records"].append(rec)
            print(json.dumps({k: v for k, v in rec.items() if "disk" not in k}), rec["disk"]["bytes_per_token"], flush=True)
finally:
    shutil.rmtree(work, ignore_errors=True)
json.dump(result, open(out_path, "w"), indent=1)
print(json.dumps(result)[:3000])
