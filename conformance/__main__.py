"""Command-line entry point: ``python -m conformance <command>``."""

from __future__ import annotations

import argparse
import sys

from conformance import bench, cases, doctor, report, soak


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and dispatch to the chosen subcommand."""
    parser = argparse.ArgumentParser(prog="python -m conformance")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report_parser = commands.add_parser("report", help=report.DESCRIPTION)
    report.add_arguments(report_parser)
    report_parser.set_defaults(handler=report.run)
    bench_parser = commands.add_parser("bench", help=bench.DESCRIPTION)
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=bench.run)
    cases_parser = commands.add_parser("cases", help="list every case and what it needs")
    cases.add_arguments(cases_parser)
    cases_parser.set_defaults(handler=cases.run)
    doctor_parser = commands.add_parser("doctor", help=doctor.DESCRIPTION)
    doctor.add_arguments(doctor_parser)
    doctor_parser.set_defaults(handler=doctor.run)
    soak_parser = commands.add_parser("soak", help=soak.DESCRIPTION)
    soak.add_arguments(soak_parser)
    soak_parser.set_defaults(handler=soak.run)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
