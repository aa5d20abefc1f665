"""`synthehr audit --input MEDS_DIR --out DIR [--filter SEVERITY] [--repair] [--llm-url URL]`."""

from __future__ import annotations

import argparse


def _cmd_audit(args: argparse.Namespace) -> int:
    from synthehr.audit.io import audit_meds
    from synthehr.audit.ruleset import load_rules

    from synthehr.audit.llm import LLMConfig

    # the reviewer runs only when a URL is given here or in $SYNTHEHR_LLM_URL; otherwise nothing is sent
    llm = LLMConfig.from_env(base_url=args.llm_url, model=args.llm_model, timeout_s=args.llm_timeout,
                             concurrency=args.llm_concurrency, cache_dir=args.llm_cache)
    rules = load_rules(args.rules) if args.rules else None
    res = audit_meds(args.input, args.out, filter_severity=args.filter, repair=args.repair, rules=rules, llm=llm,
                     llm_max_records=args.llm_max_records)
    print(f"audited {res.n_records:,} records ({res.n_events:,} events) in {res.seconds:.2f} s "
          f"({res.records_per_second:,.0f} records/s)")
    after = res.rates_after or {}
    print(f"  {'family':<16}{'input':>8}" + (f"{'after':>8}" if after else ""))
    for fam, rate in res.rates.items():
        print(f"  {fam:<16}{rate:>8.3f}" + (f"{after.get(fam, float('nan')):>8.3f}" if after else ""))
    if res.meta:
        print(f"  kept {res.meta['records_kept']:,} of {res.meta['records_in']:,} records"
              + (f"; repaired events: {sum(res.repairs.values()):,}" if res.repairs else ""))
    print(f"  audited MEDS: {args.out}/data; findings: {args.out}/audit/findings.parquet; "
          f"summary: {args.out}/audit/summary.json")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("audit", help="clinical-consistency audit of a MEDS dataset (rules, optional LLM)",
                              description="Audit a MEDS dataset with the rule tables; write the audited MEDS "
                                          "dataset and a findings table.")
    p.add_argument("--input", required=True, help="MEDS folder (data/**/*.parquet)")
    p.add_argument("--out", required=True, help="output folder: audited MEDS dataset + audit/ findings")
    p.add_argument("--filter", choices=["info", "warning", "error", "critical"],
                   help="drop records with a finding at or above this severity (default: report only)")
    p.add_argument("--repair", action="store_true", help="apply the rules' repairs before filtering")
    p.add_argument("--rules", help="folder with rule tables overriding the packaged ones")
    p.add_argument("--llm-url", help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8080/v1); "
                                     "default $SYNTHEHR_LLM_URL; without one nothing is sent")
    p.add_argument("--llm-model", help="model name (default $SYNTHEHR_LLM_MODEL)")
    p.add_argument("--llm-max-records", type=int, default=50, help="records sent to the reviewer (sampled)")
    p.add_argument("--llm-timeout", type=float, default=60.0)
    p.add_argument("--llm-concurrency", type=int, default=4)
    p.add_argument("--llm-cache", help="folder caching reviews by record hash")
    p.set_defaults(func=_cmd_audit)
