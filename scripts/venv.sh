# Shared by ./gateway and ./run-tests: a virtual environment per Python version, kept up to
# date with pyproject.toml. Sourced, not run.
PYTHON=${PYTHON:-python3}
ensure_venv() {
	local extras=$1 version stamp
	version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	VENV="$here/.venv-$version"
	stamp="$VENV/.installed$extras"
	if [ ! -x "$VENV/bin/python" ]; then
		echo "schoolgate: creating $VENV with $PYTHON ($version)" >&2
		"$PYTHON" -m venv "$VENV"
	fi
	# The matcher's C loops (schoolgate/monitoring/speedups.c, see setup.py) are built by the
	# install: again when changed, or once a C compiler has come since an install without one.
	local loops_note="$VENV/.loops-not-built" retry=""
	if [ -e "$loops_note" ] && [ "$(cat "$loops_note")" = "no compiler" ] &&
		command -v gcc >/dev/null; then
		retry=1
	fi
	if [ ! -e "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] ||
		[ "$here/setup.py" -nt "$stamp" ] ||
		[ "$here/schoolgate/monitoring/speedups.c" -nt "$stamp" ] || [ -n "$retry" ]; then
		echo "schoolgate: installing schoolgate$extras into $VENV" >&2
		"$VENV/bin/python" -m pip install --quiet --upgrade pip
		"$VENV/bin/python" -m pip install --quiet -e "$here$extras"
		touch "$stamp"
		if "$VENV/bin/python" -c 'import schoolgate.monitoring.speedups' 2>/dev/null; then
			rm -f "$loops_note"
		elif command -v gcc >/dev/null; then
			echo "build failed" >"$loops_note"
		else
			echo "no compiler" >"$loops_note"
		fi
	fi
	export PATH="$VENV/bin:$PATH"
}
ensure_system_tools() {
	# Browser tests drive Debian's Chromium; curl and openssl (s_client) are test clients; the
	# transparent-mode tests make network namespaces with ip (iproute2) and redirect their
	# traffic with nft; the PostgreSQL tests initdb a throwaway server with the postgresql
	# package's binaries; the identity tests start their own slapd (directory sign-in) and MIT
	# Kerberos KDC (Negotiate), with kinit and curl's GSSAPI (NTLM through gss-ntlmssp) as
	# clients, and python-gssapi builds against libkrb5-dev. Install them when we can.
	local missing=()
	# One apt-get run for all of them, the compiler for the C loops included.
	read -ra missing <<<"$(compiler_packages)"
	[ -x /usr/bin/chromium ] || missing+=(chromium)
	command -v curl >/dev/null || missing+=(curl)
	command -v openssl >/dev/null || missing+=(openssl)
	[ -x /usr/sbin/ip ] || command -v ip >/dev/null || missing+=(iproute2)
	[ -x /usr/sbin/nft ] || command -v nft >/dev/null || missing+=(nftables)
	compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
	# The two-factor test reads the QR code the portal draws, as a phone's camera would.
	command -v zbarimg >/dev/null || missing+=(zbar-tools)
	[ -x /usr/sbin/slapd ] || missing+=(slapd)
	[ -x /usr/sbin/krb5kdc ] || missing+=(krb5-kdc)
	[ -x /usr/sbin/kadmin.local ] || missing+=(krb5-admin-server)
	command -v kinit >/dev/null || missing+=(krb5-user)
	command -v krb5-config >/dev/null || missing+=(libkrb5-dev)
	[ -e /etc/gss/mech.d/mech.ntlmssp.conf ] || missing+=(gss-ntlmssp)
	install_debian_packages "tests that need them will fail" "${missing[@]}"
}
ensure_compiler() {
	# The matcher's C loops (schoolgate/monitoring/speedups.c) are built with a C compiler and
	# Python's headers (python-gssapi too). Without them the package installs anyway and runs
	# the same loops in Python, more slowly (the gateway says so when it starts).
	local missing=()
	read -ra missing <<<"$(compiler_packages)"
	install_debian_packages "the matcher's C loops will run in Python, more slowly" \
		"${missing[@]}" || true
}
compiler_packages() {
	# The Debian packages still missing for building the C loops: gcc, and Python's headers
	# where the interpreter is Debian's own.
	local include
	command -v gcc >/dev/null || printf '%s ' gcc
	include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
	if [ ! -e "$include/Python.h" ]; then
		case $include in /usr/include/*) printf '%s ' "$(basename "$include")-dev" ;; esac
	fi
}
install_debian_packages() {
	# install_debian_packages WHAT-IF-NOT PACKAGE...: as root with apt-get; else say what to do.
	local if_not=$1
	shift
	local missing=("$@")
	if [ ${#missing[@]} -gt 0 ]; then
		if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
			echo "schoolgate: installing ${missing[*]} from Debian's packages" >&2
			# Packages must not start services here (postgresql would start its own cluster;
			# without systemd that can fail or linger): invoke-rc.d asks policy-rc.d first.
			local policy=/usr/sbin/policy-rc.d made_policy="" status=0
			if [ ! -e "$policy" ]; then
				printf '#!/bin/sh\n# schoolgate: no services while test tools install\nexit 101\n' >"$policy"
				chmod 755 "$policy"
				made_policy=1
			fi
			{
				apt-get update -qq >/dev/null &&
					DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
						-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
						"${missing[@]}" >/dev/null
			} || status=$?
			[ -z "$made_policy" ] || rm -f "$policy"
			return "$status"
		else
			echo "schoolgate: please install ${missing[*]} ($if_not)" >&2
		fi
	fi
}
