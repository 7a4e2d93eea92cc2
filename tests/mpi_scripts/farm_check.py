"""Run under mpirun: farm tasks of very different cost over the dft group and print, on
rank 0, which rank ran each task and the makespan."""
import json
import os
import sys
import time

from pyacemaker_hpc.parallel import Farm, Team


def work(k, seconds):
    time.sleep(seconds)
    if k == 3:
        raise ValueError("task 3 fails on purpose")
    return {"k": k, "rank": int(os.environ.get("PMI_RANK", 0))}


def main():
    team = Team.create({"train": 1})
    farm = Farm(team)
    if not team.is_coordinator:
        farm.serve()
        return
    costs = [float(x) for x in sys.argv[1].split(",")]
    results = {}
    t0 = time.time()
    farm.map("dft", [(k, work, (k, c)) for k, c in enumerate(costs)], lambda k, r: results.__setitem__(k, r))
    wall = time.time() - t0
    farm.shutdown()
    out = {"wall": wall, "groups": team.groups, "size": team.size,
           "ranks": {k: (r["rank"] if isinstance(r, dict) else "failed:" + r.error.splitlines()[-1])
                     for k, r in results.items()}}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
