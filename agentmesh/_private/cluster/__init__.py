"""The cluster: membership, failure detection and the name registry (on the head),
remote spawn. Above the kernel and the transport; below the mesh."""
