"""The real site service in its own process, for the hostile tests' kill -9 faults.

    python hostile_child.py '<config as JSON>'
"""

from __future__ import annotations

import json
import sys

from fedpoint.client.service import make_service_config, serve

if __name__ == "__main__":
    serve(make_service_config(json.loads(sys.argv[1]), "hostile-child"))
