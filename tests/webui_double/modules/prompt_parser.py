"""modules/prompt_parser.py: the AND separator."""
import re

re_AND = re.compile(r"\bAND\b")
