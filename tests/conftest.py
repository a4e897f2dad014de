"""Test-session setup shared by every test module."""

import signal

# A shell starts a background job (``cmd &`` without job control, as CI scripts and
# ``nohup`` runs do) with SIGINT ignored, and a child process inherits that: the Ctrl-C tests'
# convcli would then never see their SIGINT. With Python's own handler installed here, the
# children start with the default action again, as they would from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
