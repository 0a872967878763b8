#!/usr/bin/env bash
# Development PKI for the edge-runtime broker: a CA, the broker certificate, and client
# certificates for devices, the worker role and the fleet role (CN = ACL username).
#   make-dev-certs.sh OUT_DIR [DEVICE_ID ...]      (default device: device-001)
# BROKER_HOSTS="localhost,127.0.0.1,10.0.0.1" sets the broker's subject alternative names.
# SITES="site-a site-b" also issues, per site broker (site-bridge.conf), its bridge identity <site>.crt
# (CN = the central ACL's user for that site) and its own server certificate <site>-broker.crt, whose
# subject alternative names SITE_HOSTS sets (default localhost,127.0.0.1).
# Development only: keys are unencrypted and the CA lives next to them.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUT_DIR [DEVICE_ID ...]" >&2
    exit 2
fi
out=$1; shift
devices=("$@")
[[ ${#devices[@]} -gt 0 ]] || devices=(device-001)
hosts=${BROKER_HOSTS:-localhost,127.0.0.1}
days=${CERT_DAYS:-825}

mkdir -p "$out"
cd "$out"
umask 077

newkey() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"; }

if [[ ! -f ca.key ]]; then
    newkey ca
    openssl req -new -x509 -key ca.key -sha256 -days "$days" -subj "/CN=edge-runtime dev CA" -out ca.crt
fi

alt_names() {  # "host,10.0.0.1" -> "DNS:host,IP:10.0.0.1"
    local out="" name
    IFS=, read -ra names <<<"$1"
    for name in "${names[@]}"; do
        if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then out+="IP:$name,"; else out+="DNS:$name,"; fi
    done
    echo "${out%,}"
}
san=$(alt_names "$hosts")
read -ra sites <<<"${SITES:-}"

sign() {  # sign NAME CN USAGE [SAN]
    local name=$1 cn=$2 usage=$3 alt=${4:-}
    newkey "$name"
    openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        [[ -n $alt ]] && echo "subjectAltName=$alt"
    } >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

sign broker localhost serverAuth "$san"
sign worker worker clientAuth
sign fleet fleet clientAuth
for site in "${sites[@]}"; do
    if [[ ! $site =~ ^site-[A-Za-z0-9._-]+$ ]]; then
        echo "$0: site name '$site' must be site-<name> (A-Z a-z 0-9 . _ -)" >&2
        exit 1
    fi
    sign "$site" "$site" clientAuth
    sign "$site-broker" "$site-broker" serverAuth "$(alt_names "${SITE_HOSTS:-localhost,127.0.0.1}")"
done
for device in "${devices[@]}"; do
    # site-* names are sites' bridge identities: a device with one would be its site's central user.
    if [[ $device == worker || $device == fleet || $device == site-* || ! $device =~ ^[A-Za-z0-9._-]+$ ]]; then
        echo "$0: device id '$device' is reserved or has characters other than A-Z a-z 0-9 . _ -" >&2
        exit 1
    fi
    sign "$device" "$device" clientAuth
done
chmod 644 ./*.crt
chmod 600 ./*.key
echo "certificates in $(pwd): ca.crt broker.crt worker.crt fleet.crt ${sites[*]/%/.crt} ${devices[*]/%/.crt}"
