package cni

import (
	"bufio"
	"encoding/json"
	"net"
	"reflect"
	"testing"
	"time"

	"canopy.io/canopy/cni/hint"
)

func TestNotifyAgent(t *testing.T) {
	sock := t.TempDir() + "/agent.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan hint.Hint, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadBytes('\n')
			var h hint.Hint
			_ = json.Unmarshal(line, &h)
			got <- h
			if h.Name == "slow" {
				time.Sleep(time.Second) // never answers in time
			} else {
				_ = json.NewEncoder(c).Encode(hint.Reply{Programmed: true})
			}
			c.Close()
		}
	}()
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=123"
	if !notifyAgent(sock, args, []string{"10.244.1.10"}, time.Second) {
		t.Error("programmed answer not seen")
	}
	if h := <-got; !reflect.DeepEqual(h, hint.Hint{Namespace: "x", Name: "a", IP: "10.244.1.10", IPs: []string{"10.244.1.10"}}) {
		t.Errorf("hint %+v", h)
	}
	if notifyAgent(sock, "K8S_POD_NAMESPACE=x;K8S_POD_NAME=slow", []string{"10.244.1.11"}, 200*time.Millisecond) {
		t.Error("a silent agent counted as programmed")
	}
	if notifyAgent(sock, "", []string{"10.244.1.12"}, time.Second) {
		t.Error("no pod in CNI_ARGS: nothing to tell")
	}
	if notifyAgent(t.TempDir()+"/none.sock", args, []string{"10.244.1.12"}, time.Second) {
		t.Error("no agent listening counted as programmed")
	}
}
