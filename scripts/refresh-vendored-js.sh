#!/usr/bin/env bash
# Refresh the vendored JavaScript under _vendor/ from the npm registry (pinned versions).
# The built pages load these instead of a CDN, so sliders and math work offline.
set -euo pipefail
HTML_MANAGER=1.0.15   # @jupyter-widgets/html-manager 1.x matches ipywidgets 8
REQUIREJS=2.3.8
MATHJAX=3.2.2

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@jupyter-widgets/html-manager@$HTML_MANAGER" "requirejs@$REQUIREJS" "mathjax@$MATHJAX" >/dev/null
for tarball in *.tgz; do mkdir -p "${tarball%.tgz}" && tar xzf "$tarball" -C "${tarball%.tgz}"; done

vendor="$root/_vendor"
rm -rf "$vendor/widgets" "$vendor/mathjax"
mkdir -p "$vendor/widgets" "$vendor/mathjax/output/chtml/fonts"
cp "requirejs-$REQUIREJS/package/require.js" "$vendor/widgets/"
cp jupyter-widgets-html-manager-$HTML_MANAGER/package/dist/embed-amd.js "$vendor/widgets/"
cp jupyter-widgets-html-manager-$HTML_MANAGER/package/dist/*.woff2 "$vendor/widgets/"
cp "mathjax-$MATHJAX/package/es5/tex-chtml.js" "$vendor/mathjax/"
cp -r "mathjax-$MATHJAX/package/es5/output/chtml/fonts/woff-v2" "$vendor/mathjax/output/chtml/fonts/"
cat > "$vendor/VERSIONS" <<VERSIONS
@jupyter-widgets/html-manager $HTML_MANAGER (dist/embed-amd.js and its woff2 fonts)
requirejs $REQUIREJS (require.js)
mathjax $MATHJAX (es5/tex-chtml.js and its woff-v2 fonts)
VERSIONS
echo "vendored into $vendor:" && du -sh "$vendor"/*
