"""
C{python -m responses_proxy}: the console script.
"""

from responses_proxy.cli import main

main()
