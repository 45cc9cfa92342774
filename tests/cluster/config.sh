# shellcheck shell=bash
# The files every node of the test cluster needs (certificates, kubeconfigs, CNI, containerd and
# kubelet configuration), written by functions so that tests/cluster/up (node 1) and
# tests/cluster/node (extra nodes) configure their nodes the same way. Sourced after lib.sh.

openssl_cnf() {  # $1 = extensions
  printf '[req]\ndistinguished_name=dn\n[dn]\n[ext]\n%s\n' "$1"
}
# A key and a certificate signed by the cluster CA, both in the current directory (which holds
# ca.crt and ca.key, i.e. $PKI).
cert() {  # name subject extendedKeyUsage [subjectAltName]
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$3"
  [ -n "${4:-}" ] && ext="$ext
subjectAltName=$4"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" \
    -out "$1.csr" -subj "$2" -config <(openssl_cnf "") 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out "$1.crt" \
    -extfile <(printf '%s\n' "$ext") 2>/dev/null
  rm -f "$1.csr"
}
kubeconfig() {  # file user cert (the name of a certificate in $PKI)
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubemagic
  cluster:
    server: https://$HOST_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$3.crt")
    client-key-data: $(base64 -w0 < "$PKI/$3.key")
contexts:
- name: kubemagic
  context: {cluster: kubemagic, user: $2, namespace: default}
current-context: kubemagic
EOF
  chmod 600 "$1"
}

# The node's pod network: the CNI bridge plugin with host-local IPAM. range_end keeps node 1's
# pods off 10.88.255.x, the addresses of the extra nodes on the same bridge.
# The network name prefixes the CNI result cache files (/var/lib/cni/results/NAME-CONTAINER-IF).
write_cni_conflist() {  # file network_name bridge subnet gateway ipam_dir [range_end]
  local range="\"subnet\": \"$4\", \"gateway\": \"$5\""
  [ -n "${7:-}" ] && range="$range, \"rangeEnd\": \"$7\""
  cat > "$1.tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$2",
  "plugins": [
    {
      "type": "bridge", "bridge": "$3", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$6",
        "ranges": [[{$range}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # containerd reloads the CNI config when the file changes: never show it half written, and
  # leave it alone when it is the same
  if cmp -s "$1.tmp" "$1"; then rm -f "$1.tmp"; else mv "$1.tmp" "$1"; fi
}

write_containerd_config() {  # file root_dir run_dir cni_conf_dir; socket: run_dir/containerd.sock
  cat > "$1" <<EOF
version = 2
root = "$2/root"
state = "$3/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$3/containerd.sock"
[ttrpc]
  address = "$3/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$2/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  max_container_log_line_size = 65536
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$3/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$4"
    max_conf_num = 1
EOF
}

# nodeLeaseDurationSeconds 8: the kubelet renews its Lease every 2 s (a quarter of it), well
# inside the controller-manager's --node-monitor-grace-period of 10 s (up), so a live node never
# looks lost while a stopped one is NotReady within ~10-12 s.
write_kubelet_config() {  # file address containerd_sock pod_logs_dir [cgroup_root] [taint key=value:effect]
  local extra=""
  [ -n "${5:-}" ] && extra="cgroupRoot: \"$5\""
  if [ -n "${6:-}" ]; then
    local key=${6%%=*} rest=${6#*=}
    extra="$extra
registerWithTaints: [{key: \"$key\", value: \"${rest%%:*}\", effect: \"${rest#*:}\"}]"
  fi
  cat > "$1" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $2
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization:
  mode: Webhook
containerRuntimeEndpoint: "unix://$3"
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failSwapOn: false
failCgroupV1: false
resolvConf: "$STATE/resolv.conf"
podLogsDir: "$4"
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
maxPods: 110
rotateCertificates: false
serverTLSBootstrap: false
nodeStatusReportFrequency: 1m
nodeLeaseDurationSeconds: 8
$extra
EOF
}
