"""Print constraints.txt: the exact installed versions of gptune[dev,deepspeed] and everything they pull in.

    python .ci/freeze.py > constraints.txt     # after the suite passed on these versions (.ci/run latest)
"""

import importlib.metadata as md
import re

from packaging.requirements import Requirement

EXTRAS = {"", "dev", "deepspeed", "clean"}
seen: dict[str, str] = {}
todo = [Requirement(r) for r in md.requires("gptune") or []]
while todo:
    req = todo.pop()
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if name in seen or (req.marker and not any(req.marker.evaluate({"extra": e}) for e in EXTRAS)):
        continue
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        continue
    seen[name] = dist.version.split("+")[0]  # torch 2.13.0+cpu: the same release on any build
    for sub in dist.requires or []:
        q = Requirement(sub)
        if not q.marker or q.marker.evaluate({"extra": ""}):
            todo.append(q)
print("# The exact versions CI tests together (python 3.11, CPU): pip install -c constraints.txt ...")
print("# Regenerate after a tested upgrade (.ci/run latest): python .ci/freeze.py > constraints.txt")
for n in sorted(seen):
    print(f"{n}=={seen[n]}")
