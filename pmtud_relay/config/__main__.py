"""``python -m pmtud_relay.config``: --write-docs FILE, --write-example FILE, --check FILE."""

from pmtud_relay.config.render import main

raise SystemExit(main())
