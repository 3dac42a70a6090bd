import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: F401  (reads HUB_TEST_REQUIRE_ALL and HUB_TEST_PG first)

# The suite's own switches are not hub configuration: the hubs under test (in this process or
# started from it) must not see them.
for _name in [k for k in os.environ if k.upper().startswith("HUB_TEST_")]:
    del os.environ[_name]
