# dmsguard — the two commands a new user needs, plus helpers.
.PHONY: test demo lab-up lab-down fmt lint

test:   ## Install and start the lab services, then run every check and test.
	bash scripts/test

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
