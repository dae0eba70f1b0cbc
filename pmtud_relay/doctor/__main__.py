from pmtud_relay.doctor.command import cli

raise SystemExit(cli())
