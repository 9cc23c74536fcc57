// The loopback etcd cluster lives in chaos/ (the chaos suite is built to dist and uses it too).
export { memberArgs, startTestEtcdCluster, type EtcdMember, type TestEtcdCluster } from "../../chaos/etcd-cluster.js";
