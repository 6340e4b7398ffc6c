// A static Go net/http GET with the placeholder header (`goget URL NAME`), built on the host
// with CGO_ENABLED=0 and run in the guest. It prints one `workload: NAME ...` line and sets
// no trust store or proxy itself: Go reads SSL_CERT_FILE / the distro bundle and
// HTTPS_PROXY on its own, and its pure-Go resolver reads /etc/resolv.conf.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	url, name := os.Args[1], os.Args[2]
	client := &http.Client{Timeout: 300 * time.Second}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		fmt.Printf("workload: %s error=%v\n", name, err)
		return
	}
	req.Header.Set("Authorization", "Bearer "+os.Getenv("API_KEY"))
	resp, err := client.Do(req)
	if err != nil {
		fmt.Printf("workload: %s error=%v\n", name, err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("workload: %s status=%d out=%s\n", name, resp.StatusCode, strings.TrimSpace(string(body)))
}
