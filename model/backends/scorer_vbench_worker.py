"""Runs inside the vbench environment's interpreter (not the project venv): one request.

    <vbench python> scorer_vbench_worker.py request.json

``request.json``: ``{"videos": {name: path}, "prompts": {name: text}, "dimensions": [...],
"device": "cuda" | "cpu", "cache_dir": path | null, "work_dir": path, "result": path}``.
It links the videos into one folder, runs VBench's Python API in custom-input mode
(``VBench(device, full_info, out).evaluate(..., mode="custom_input", local=True)``: weights
from ``cache_dir`` = ``VBENCH_CACHE_DIR``, nothing downloaded) and writes ``result``:
``{"version": ..., "scores": {name: {dimension: value}}}``. Standard library + vbench only:
nothing of the project is importable here.
"""

import json
import os
import sys


def main(request_path):
    with open(request_path) as f:
        req = json.load(f)
    if req.get("cache_dir"):
        os.environ["VBENCH_CACHE_DIR"] = req["cache_dir"]
    import torch
    import vbench
    from vbench import VBench

    try:
        from importlib.metadata import version

        ver = version("vbench")
    except Exception:
        ver = getattr(vbench, "__version__", "unknown")
    videos_dir = os.path.join(req["work_dir"], "videos")
    out_dir = os.path.join(req["work_dir"], "out")
    os.makedirs(videos_dir, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    by_file = {}
    for name, path in req["videos"].items():
        file = name + ".mp4"
        link = os.path.join(videos_dir, file)
        if not os.path.exists(link):
            os.symlink(os.path.abspath(path), link)
        by_file[file] = name
    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    bench = VBench(torch.device(req.get("device") or "cpu"), full_info, out_dir)
    prompts = {file: req["prompts"].get(name, name) for file, name in by_file.items()}
    bench.evaluate(
        videos_path=videos_dir,
        name="yume",
        prompt_list=prompts,
        dimension_list=req["dimensions"],
        local=True,
        mode="custom_input",
    )
    with open(os.path.join(out_dir, "yume_eval_results.json")) as f:
        results = json.load(f)
    scores = {name: {} for name in by_file.values()}
    for dim, value in results.items():
        per_video = value[1] if isinstance(value, list) and len(value) > 1 else []
        for entry in per_video:
            name = by_file.get(os.path.basename(str(entry.get("video_path", ""))))
            res = entry.get("video_results")
            if name is not None and isinstance(res, (int, float, bool)):
                scores[name][dim] = float(res)
    with open(req["result"] + ".tmp", "w") as f:
        json.dump({"version": ver, "scores": scores}, f)
    os.replace(req["result"] + ".tmp", req["result"])


if __name__ == "__main__":
    main(sys.argv[1])
