"""Command-line help and checks shared by the console scripts.

- :class:`DefaultsFormatter`: ``--help`` shows every option's default (argparse's own formatter
  prints "(default: None)" for options without one).
- :func:`node_help` and :func:`check_node_arguments`: ``depth_completion_node --help`` prints the
  parameter table with defaults, and ``--ros-args -p``/``--params-file`` are checked against the
  node's parameter list (names, types, ranges, choices) before rclpy starts, so a typo or a bad
  value ends in one line naming the parameter instead of being ignored or a traceback.
"""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" where an option has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS
        if "%(default)" in text or unset or (isinstance(default, str | list) and not default):
            return text
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return text
        return text + " (default: %(default)s)"
