# The README's two commands. Each creates the environment it needs (scripts/bootstrap.sh).
.PHONY: compare test setup browser speech

export HF_HUB_OFFLINE := 1

setup:
	@scripts/bootstrap.sh

# Main job: every format on the built-in default task (mnist-cnn), side by side, and a recommendation.
compare: setup
	.venv/bin/quantwise compare --out quantwise-compare --overwrite

# Headless Chromium for the HTML report test (Debian package), installed when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; the HTML browser test will fail" >&2

# Debian's espeak-ng speaks the clips the silero-vad (ONNX, three inputs) test labels speech/silence with.
speech:
	@command -v espeak-ng >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) || echo "warning: could not install espeak-ng; the silero-vad test will fail" >&2

# Lint, format, types and the import-layer contract first (seconds), then the tests.
test: setup browser speech
	.venv/bin/ruff check src tests benchmarks scripts
	.venv/bin/ruff format --check src tests benchmarks scripts
	.venv/bin/lint-imports
	.venv/bin/mypy
	.venv/bin/python -m pytest -n 2 --dist loadgroup --durations=15
