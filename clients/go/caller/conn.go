// Package caller holds what the examples share: their flags (target, TLS, mutual TLS, API key,
// deadline), the connection, the images of a folder, and one line per image with a failed
// call's google.rpc.Status decoded (status.go).
package caller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// Options are the flags every example takes, and its one argument, a folder of images.
type Options struct {
	Target  string
	CA      string
	Cert    string
	Key     string
	APIKey  string
	Timeout time.Duration
	Images  string
}

// ParseArgs reads the flags; a usage error exits with status 2.
func ParseArgs(about string) Options {
	var o Options
	flag.StringVar(&o.Target, "target", "127.0.0.1:4603", "server host:port")
	flag.StringVar(&o.CA, "ca", "", "TLS: PEM root certificate the server's certificate chains to")
	flag.StringVar(&o.Cert, "cert", "", "mutual TLS: PEM client certificate chain (with -key)")
	flag.StringVar(&o.Key, "key", "", "mutual TLS: the client certificate's PEM private key")
	flag.StringVar(&o.APIKey, "api-key", "", "sent as `authorization: Bearer <key>`")
	flag.DurationVar(&o.Timeout, "timeout", 60*time.Second, "deadline of each call (or stream)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "%s\nusage: %s [flags] IMAGES_DIR\n", about, os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 || (o.Cert == "") != (o.Key == "") {
		flag.Usage()
		os.Exit(2)
	}
	o.Images = flag.Arg(0)
	return o
}

// Dial opens the one connection an example shares between its calls: plain HTTP/2, or TLS when
// -ca or -cert is given (the system's roots without -ca).
func Dial(o Options) (*grpc.ClientConn, error) {
	// Debian's grpc-go 1.33 has no credentials/insecure; WithInsecure is its plaintext option.
	transport := grpc.WithInsecure()
	if o.CA != "" || o.Cert != "" {
		config := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CA != "" {
			pem, err := os.ReadFile(o.CA)
			if err != nil {
				return nil, err
			}
			config.RootCAs = x509.NewCertPool()
			if !config.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: no PEM certificate", o.CA)
			}
		}
		if o.Cert != "" {
			pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
			if err != nil {
				return nil, err
			}
			config.Certificates = []tls.Certificate{pair}
		}
		transport = grpc.WithTransportCredentials(credentials.NewTLS(config))
	}
	return grpc.Dial(o.Target, transport)
}

// Context is one call's: its deadline, and the API key when one is given.
func (o Options) Context() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	if o.APIKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+o.APIKey)
	}
	return ctx, cancel
}

// Image is one file of the folder; the server, not the file's name, decides whether it is one.
type Image struct {
	Name    string
	Content []byte
}

// Images reads every regular file of dir (hidden ones excepted), by name.
func Images(dir string) ([]Image, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var images []Image
	for _, entry := range entries {
		if !entry.Type().IsRegular() || entry.Name()[0] == '.' {
			continue
		}
		content, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		if err != nil {
			return nil, err
		}
		images = append(images, Image{entry.Name(), content})
	}
	sort.Slice(images, func(i, j int) bool { return images[i].Name < images[j].Name })
	if len(images) == 0 {
		return nil, errors.New(dir + ": no files")
	}
	return images, nil
}

// Fatal reports an error that stops the example before any image (exit status 2).
func Fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(2)
}

// Start is every example's beginning: its flags parsed, the folder's images read and the one
// connection dialled; it exits with the error when any of these fails.
func Start(about string) (Options, []Image, *grpc.ClientConn) {
	options := ParseArgs(about)
	images, err := Images(options.Images)
	if err != nil {
		Fatal(err)
	}
	conn, err := Dial(options)
	if err != nil {
		Fatal(err)
	}
	return options, images, conn
}
