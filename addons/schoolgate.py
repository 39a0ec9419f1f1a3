"""schoolgate as a mitmproxy script:

    mitmdump -s addons/schoolgate.py --set schoolgate_config=mitm_config.yaml \
        --set schoolgate_data_dir=var --set confdir=var/ca

(``connection_strategy`` is forced to ``lazy`` by the addons: block pages over HTTPS and no
contact with blocked hosts need it.) See docs/gateway.md.
"""

import os
import sys

# mitmproxy puts this script's folder first on sys.path, where this file would shadow the
# schoolgate package: take it out, and fall back to the checkout this script belongs to.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
if getattr(sys.modules.get("schoolgate"), "__file__", None) == os.path.abspath(__file__):
    del sys.modules["schoolgate"]
try:
    import schoolgate.gateway  # noqa: F401
except ImportError:
    sys.path.append(os.path.dirname(_here))

from schoolgate.gateway import make_chain  # noqa: E402

addons = make_chain()
