# dmsguard — the two commands a new user needs, plus helpers.
.PHONY: test test-realistic demo lab-up lab-down fmt lint dist dist-check

test:   ## Install and start the lab services, then run every check and test.
	bash scripts/test

test-realistic:   ## The chain scenarios with every DMS stop and start taking 30 s, as on AWS.
	bash tests/lab/up --pg-only
	DMSGUARD_TEST_DMS_SECONDS=30 cargo test --locked -p dmsguard-lab --test 'chain_*'

demo:   ## Bring up the lab and run the whole stack with a fault injected and repaired.
	bash scripts/demo

lab-up:
	bash tests/lab/up

lab-down:
	bash tests/lab/down

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Stripped release binaries (profile `dist`) and a Debian package per binary in target/debian.
# Slow (a full optimised build): never part of `make test`. cargo-deb comes from crates.io.
dist:   ## Stripped release binaries and Debian packages with hardened systemd units.
	DMSGUARD_REVISION=$$(git rev-parse --short HEAD) cargo build --locked --profile dist \
		--bin dmsguard-exporter --bin dmsguard-remediator
	command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
	for p in dmsguard-exporter dmsguard-remediator; do \
		cargo deb --no-build --profile dist -p $$p || exit 1; \
	done
	ls -l target/dist/dmsguard-exporter target/dist/dmsguard-remediator target/debian/*.deb

dist-check: dist   ## Unpack the packages, run the installed exporter with its unit's command line.
	bash deploy/check-packages target/debian
