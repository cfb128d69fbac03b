"""Allow `python -m fedrecon`."""

from fedrecon.main import main

raise SystemExit(main())
