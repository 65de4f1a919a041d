// Command detect runs DetectObjects on each image of a folder, one unary call per image over
// one connection, and prints "<file> OK" or "<file> <CODE> <REASON> <field>" per image.
package main

import (
	"google.golang.org/protobuf/proto"

	"vision-grpc/clients/go/caller"
	visionv1 "vision-grpc/gen/go/vision/v1"
)

func main() {
	options, images, conn := caller.Start("detect: DetectObjects on each image of a folder")
	defer conn.Close()
	detection := visionv1.NewDetectionServiceClient(conn)
	var report caller.Report
	for _, image := range images {
		ctx, cancel := options.Context()
		_, err := detection.DetectObjects(ctx, &visionv1.DetectObjectsRequest{
			Image:   &visionv1.Image{Source: &visionv1.Image_Content{Content: image.Content}},
			Options: &visionv1.DetectionOptions{ScoreThreshold: proto.Float32(0.3)},
		})
		cancel()
		report.Call(image.Name, err)
	}
	report.Exit()
}
