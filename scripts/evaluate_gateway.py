"""HR@K measured through the running gateway, next to the trainer's offline figures.

For every user in the bundle's held-out split it calls ``RecommendBatch``
(k = 100) once with and once without ``exclude_seen``, finds the rank of each
held-out movie, and reports HR@K for K = 1..100 for both protocols beside the
offline numbers in ``<bundle>/evaluation/report.json`` (exact dot products).
The difference is what ScaNN's approximation and serving change.

    python scripts/evaluate_gateway.py --model-base models/movielens --out docs/evaluation/gateway.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "protos")]

from recsys.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from serving import bundle  # noqa: E402

MAX_K = 100
TABLE_KS = (1, 5, 10, 20, 50, 100)
PROTOCOLS = {"all": False, "seen_excluded": True}


def read_pairs(path: Path) -> dict[str, list[str]]:
    by_user: dict[str, list[str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            by_user.setdefault(row["user_id"], []).append(row["item_id"])
    return by_user


def gateway_hit_rates(stub, by_user: dict[str, list[str]], exclude_seen: bool, version: str, batch: int):
    hits = np.zeros(MAX_K + 1, dtype=np.int64)
    users = sorted(by_user)
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        response = stub.RecommendBatch(
            gateway_pb2.RecommendBatchRequest(
                requests=[gateway_pb2.RecommendRequest(user_id=u, k=MAX_K, exclude_seen=exclude_seen) for u in chunk]
            ),
            timeout=60,
        )
        for user, answer in zip(chunk, response.responses):
            if answer.model_version != version:
                raise SystemExit(f"gateway answered with model version {answer.model_version}, bundle is {version}")
            rank = {item.item_id: r for r, item in enumerate(answer.items)}
            for item in by_user[user]:
                hits[rank.get(item, MAX_K)] += 1
    return np.cumsum(hits[:MAX_K]) / sum(len(v) for v in by_user.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="127.0.0.1:50051")
    parser.add_argument("--model-base", default=str(REPO / "models" / "movielens"))
    parser.add_argument("--batch", type=int, default=200, help="users per RecommendBatch call")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()

    versions = bundle.version_dirs(args.model_base)
    if not versions:
        raise SystemExit(f"no bundle under {args.model_base}")
    version, path = max(versions.items())
    offline = json.loads((path / bundle.EVALUATION / "report.json").read_text())
    by_user = read_pairs(path / bundle.EVALUATION / "test_interactions.tsv")
    started = time.perf_counter()
    with grpc.insecure_channel(args.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        online = {p: gateway_hit_rates(stub, by_user, ex, str(version), args.batch) for p, ex in PROTOCOLS.items()}
    seconds = time.perf_counter() - started

    n_pairs = sum(len(v) for v in by_user.values())
    print(f"model version {version}: {n_pairs} held-out pairs, {len(by_user)} users, "
          f"{2 * len(by_user)} recommendations in {seconds:.1f} s")
    print(f"{'HR@K':<34}" + "".join(f"{f'@{k}':>9}" for k in TABLE_KS))
    rows = {}
    for protocol in PROTOCOLS:
        for label, values in (
            ("offline (exact)", np.array(offline["model"][protocol])),
            ("gateway (ScaNN)", online[protocol]),
            ("popularity (offline)", np.array(offline["popularity"][protocol])),
        ):
            rows[f"{label}, {protocol}"] = values
            print(f"{f'{label}, {protocol}':<34}" + "".join(f"{values[k - 1]:>9.4f}" for k in TABLE_KS))
        diff = np.abs(online[protocol] - np.array(offline["model"][protocol]))
        print(f"{f'max |gateway - offline|, {protocol}':<34}{diff.max():>9.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "model_version": version, "pairs": n_pairs, "users": len(by_user),
            "k": list(range(1, MAX_K + 1)),
            "gateway": {p: v.round(6).tolist() for p, v in online.items()},
            "offline": {p: offline["model"][p] for p in PROTOCOLS},
            "popularity": {p: offline["popularity"][p] for p in PROTOCOLS},
        }, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
