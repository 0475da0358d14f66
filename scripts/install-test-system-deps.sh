#!/usr/bin/env bash
# Debian packages the tests use: Chromium opens the HTML report in a real browser, and a
# throwaway PostgreSQL server holds the study that two workers share. Installs what is
# missing where it can (root with apt-get); elsewhere it says what to install, and those
# tests skip outside CI.
set -euo pipefail

missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$missing postgresql"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages for the tests:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
    echo "note: the browser and PostgreSQL tests need Debian's$missing (apt-get install$missing); they skip without them"
fi
