// Package bfd is Canopy's BFD speaker: it tells, within a fraction of a second, that a BGP peer one hop away has
// stopped forwarding, so the BGP session can be reset at once instead of at the end of the hold time. (GoBGP v3,
// Canopy's BGP library, has no BFD.)
//
// # What is supported
//
//   - BFD Asynchronous mode (RFC 5880): the Down/Init/Up/AdminDown state machine with its diagnostics, the
//     reception rules of §6.8.6, timer negotiation (our transmit interval is the larger of our Desired Min TX and
//     the peer's Required Min RX; the Detection Time is the peer's Detect Mult times the larger of our Required
//     Min RX and the peer's Desired Min TX), Poll/Final sequences for timer changes while Up (so a change never
//     flaps a session), at most one packet a second while not Up, and 75–100 % jitter (75–90 % with Detect
//     Mult 1).
//   - Single hop over IPv4 and IPv6 (RFC 5881), link-local addresses included: packets to UDP port 3784
//     (Config.Port), from a source port in 49152–65535, with TTL / Hop Limit 255 and DSCP CS6; a received packet
//     whose TTL / Hop Limit is not 255 is dropped (GTSM, RFC 5881 §5).
//   - One session per (peer address, local address), demultiplexed by Your Discriminator, else by addresses;
//     either way the packet's addresses must be the session's.
//
// Not supported: the Echo function (we advertise a Required Min Echo RX of 0), authentication (a packet with the
// A bit is dropped and counted as "auth"), Demand mode (we never set D; a peer that does still gets our periodic
// packets, which it can ignore), multihop (RFC 5883), multipoint, and the C bit (always 0: a restart of Canopy
// takes its sessions down).
//
// # Shape
//
// The protocol is pure and table-tested: Decode and Packet.Encode are the wire format; a Session is one
// session's state as a plain value, driven by Receive(packet, now), Tick(now) and Configure, each returning
// at most one packet to send and one state change; NextDeadline says when it next needs Tick. No socket and no
// clock are involved.
//
// The Server is the I/O around them. New opens the sockets in the network namespace of the calling thread: per
// address family one receive socket on the wildcard address, and per local address one send socket. Run is the
// one event loop: a single goroutine owns all sessions and one time.Timer set to the earliest deadline of a
// heap. One reader goroutine per receive socket drops hostile input before it reaches the loop — wrong TTL,
// malformed, with authentication, from an address that is no peer's — in O(1) and without allocating (only a
// fixed buffer), counting each drop by reason, and queues the rest (a full queue drops too).
//
// The API is desired-state: SetPeers takes the full list of sessions wanted and changes only what differs — it
// adds new sessions, changes timers of existing ones (through a Poll Sequence when Up) and removes the others
// (they send AdminDown with diagnostic Administratively Down three times, then are forgotten with their metric
// series). Subscribe delivers state changes in order, each subscriber from its own goroutine, so a slow one
// never holds up the loop. Sessions returns the status of each session for a status command.
//
//	srv, err := bfd.New(bfd.Config{LocalAddrs: []netip.Addr{nodeIP}, Log: log})
//	...
//	srv.Subscribe(func(e bfd.Event) {
//		if e.Old == bfd.StateUp { resetBGP(e.Peer) }
//		if e.New == bfd.StateUp { nudgeBGP(e.Peer) }
//	})
//	go srv.Run(ctx)
//	err = srv.SetPeers([]bfd.PeerConfig{{Peer: tor, DesiredMinTx: 300 * time.Millisecond,
//		RequiredMinRx: 300 * time.Millisecond, DetectMultiplier: 3}})
//
// # Behaviour worth knowing
//
//   - A state change and a Poll are answered with a packet at once (outside the periodic schedule), so the
//     three-way handshake takes a round trip, not seconds.
//   - A Poll Sequence applies a longer transmit interval and a shorter Required Min RX only when the Final
//     arrives (RFC 5880 §6.8.3); a shorter transmit interval and a longer Required Min RX apply at once, because
//     the peer shortens its Detection Time as soon as it reads the Poll.
//   - When Run ends, nothing is sent: peers detect the silence after their Detection Time, as they would a
//     crash.
//   - Linux removes a link's IPv6 addresses when the link goes down (unless keep_addr_on_down is set); a session
//     from such an address then fails to send (Status.SendError) until the address is back.
//
// # Metrics
//
// Collectors returns canopy_bfd_session_state{peer} (0 AdminDown, 1 Down, 2 Init, 3 Up),
// canopy_bfd_packets_sent_total{peer}, canopy_bfd_packets_received_total{peer},
// canopy_bfd_state_changes_total{peer,state} and canopy_bfd_packets_dropped_total{reason} with reasons ttl,
// malformed, no_session, auth and overload. A peer's series go when it is removed or Run ends.
//
// # Tests
//
// Unit, table and fuzz tests run without root. As root, the kernel tests run Servers in network namespaces
// (Up, failure detection, GTSM, hostile input, timer changes, removal, link-local) and against FRR's bfdd
// (TestFRRInterop). Benchmarks: `go test -run '^$' -bench . -benchtime 1x ./bgp/bfd` measures detection times
// (BenchmarkDetection) and CPU use with 100 sessions (BenchmarkCPU100Sessions, and the same load on bfdd).
package bfd
