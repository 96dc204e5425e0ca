"""`nlp-contrastive train|eval|mine|push`: thin dispatch; each subcommand's logic lives in its module."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nlp-contrastive", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train from a YAML recipe (extra --key value pairs override it)", add_help=False)
    eval_parser = sub.add_parser("eval", help="evaluate a model on STS / retrieval / reranking suites")
    mine_parser = sub.add_parser("mine", help="mine hard negatives for (query, positive) data over a corpus")
    push_parser = sub.add_parser("push", help="push a trained output folder to the Hugging Face hub")
    if argv[:1] == ["train"]:  # train parses its own flags (recipe keys are open-ended)
        from nlp_contrastive.train import main as train_main

        return train_main(argv[1:])
    from nlp_contrastive.evaluation.command import add_eval_arguments, run_eval
    from nlp_contrastive.hub import add_push_arguments, run_push
    from nlp_contrastive.mining import add_mine_arguments, run_mine

    add_eval_arguments(eval_parser)
    add_mine_arguments(mine_parser)
    add_push_arguments(push_parser)
    args = parser.parse_args(argv)
    return {"eval": run_eval, "mine": run_mine, "push": run_push}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
