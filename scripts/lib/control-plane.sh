# Sourced by scripts that need a real API server for one run (test-rust.sh, bench-operator.sh).
#
#   start_control_plane KIT K8S_HOME API_PORT ETCD_PORT ETCD_PEER_PORT KCM_PORT
#
# starts kube-apiserver + kube-controller-manager + etcd from the local Kubernetes kit KIT
# (../shared/k8s) with that state folder and those ports (apart from a developer's default
# cluster), stops and wipes it when the calling script exits (also on failure), and sets
# CONTROL_PLANE_KUBECONFIG to its kubeconfig. Exports K8S_HOME, so `$K8S_HOME/bin/kubectl` works.
start_control_plane() {
  local kit=$1
  export K8S_HOME=$2 K8S_API_PORT=$3 K8S_ETCD_PORT=$4 K8S_ETCD_PEER_PORT=$5 K8S_KCM_PORT=$6
  _control_plane_kit=$kit
  trap '"$_control_plane_kit/down.sh" --wipe >/dev/null 2>&1 || echo "down.sh failed (state in $K8S_HOME)" >&2' EXIT
  CONTROL_PLANE_KUBECONFIG="$("$kit/up.sh")"
}
