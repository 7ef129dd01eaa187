# shellcheck shell=bash
# Shell helpers that contrib/demo.sh and contrib/bench.sh source.
# Sourcing defines functions only; it runs nothing.

# The first Debian archive URI that this machine's apt sources use for
# bookworm (one-line .list entries first, then deb822 .sources files).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && awk '$1 == "deb" && $3 == "bookworm" && /main/ { sub("/$", "", $2); print $2; exit }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && awk '
            /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") hit = 1 }
            /^$/ { if (hit && uri) { sub("/$", "", uri); print uri; exit } uri = ""; hit = 0 }
            END { if (hit && uri) { sub("/$", "", uri); print uri } }' "$f"
    done
}
