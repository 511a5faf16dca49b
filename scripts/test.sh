#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages, Python packages) and run it.
# Used by the README and by .ci/run; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_BREAK_SYSTEM_PACKAGES=1 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

need=()
command -v curl >/dev/null || need+=(curl)
command -v nmap >/dev/null || need+=(nmap)
command -v setpriv >/dev/null || need+=(util-linux)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)  # tests/test_serve.py drives chromium (selenium)
command -v nats-server >/dev/null || need+=(nats-server)
for tool in swaks ncat proxychains4 wget msmtp hydra strace; do  # tests/test_third_party_clients.py
  command -v "$tool" >/dev/null || need+=("$tool")
done
# swaks needs these for -tls and AUTH (Debian only recommends them)
for mod in Net::SSLeay:libnet-ssleay-perl IO::Socket::SSL:libio-socket-ssl-perl Authen::SASL:libauthen-sasl-perl \
           Digest::HMAC_MD5:libdigest-hmac-perl; do
  perl -M"${mod%%:*}" -e1 2>/dev/null || need+=("${mod##*:}")
done
# deploy/ (tests/test_deploy_systemd.py, tests/test_container.py): systemd-analyze, a system Python
# with venv for the unit's unprivileged user, podman and mmdebstrap for the image
command -v systemd-analyze >/dev/null || need+=(systemd)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
command -v podman >/dev/null || need+=(podman)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
# the IPFire location database and its reader: AS numbers offline (tests/test_analysis_enrich.py)
[ -f /usr/share/libloc-location/location.db ] || need+=(libloc-database)
/usr/bin/python3 -c 'import location' 2>/dev/null || need+=(python3-location)
# p0f's signature database classifies the sources' SYN fingerprints (tests/test_synfp.py)
[ -f /etc/p0f/p0f.fp ] || need+=(p0f)
# py-tlsh (the tlsh extra, in the test extra) builds from source
command -v g++ >/dev/null || need+=(g++)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)  # Spark's engine (tests/test_spark.py)
command -v prometheus >/dev/null || need+=(prometheus)  # scrapes a sensor (tests/test_metrics.py)
# the real products the personas are compared with (tests/test_personas_real.py), each run
# by the test in a network namespace of its own (unshare from util-linux, ip from iproute2)
command -v squid >/dev/null || need+=(squid)
command -v tinyproxy >/dev/null || need+=(tinyproxy)
command -v danted >/dev/null || need+=(dante-server)
command -v postfix >/dev/null || need+=(postfix)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
# receives the outputs (tests/test_outputs.py): imfile, imtcp/imudp, TLS through the gtls driver
command -v rsyslogd >/dev/null || need+=(rsyslog)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || [ -n "$(find /usr/lib -name lmnsd_gtls.so 2>/dev/null | head -1)" ] \
  || need+=(rsyslog-gnutls)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    # Their postinst scripts would start the system's squid, tinyproxy, danted and postfix
    # (through invoke-rc.d when there is no systemd). A policy-rc.d that says 101 (refused)
    # keeps every service down; the tests start their own instances. One already there is kept.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1
    fi
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || status=$?
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
    [ "${status:-0}" = 0 ] || exit "$status"
  else
    echo "missing tools (${need[*]}): run as root or install them; their tests will be skipped" >&2
  fi
fi

python3 -m pip install -q -e '.[analysis,test,spark]'
exec python3 -m pytest -q -p no:cacheprovider "$@"
