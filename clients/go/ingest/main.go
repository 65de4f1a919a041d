// Command ingest indexes each image of a folder (IngestImage, id = the file's name, metadata
// source=go-example), then finds it again by searching with the same photo (Search, images
// index); "<file> OK" when the search returns the image, else its failed call's line.
package main

import (
	"google.golang.org/grpc/codes"

	"vision-grpc/clients/go/caller"
	visionv1 "vision-grpc/gen/go/vision/v1"
)

func main() {
	options, images, conn := caller.Start("ingest: index each image of a folder, then find it by itself")
	defer conn.Close()
	ingest := visionv1.NewIngestServiceClient(conn)
	search := visionv1.NewSearchServiceClient(conn)
	metadata := map[string]string{"source": "go-example"}
	var report caller.Report
	for _, image := range images {
		content := &visionv1.Image{Source: &visionv1.Image_Content{Content: image.Content}}
		ctx, cancel := options.Context()
		_, err := ingest.IngestImage(ctx, &visionv1.IngestImageRequest{
			Options: &visionv1.IngestOptions{Id: image.Name, Metadata: metadata},
			Image:   content,
		})
		if err == nil {
			var found *visionv1.SearchResponse
			found, err = search.Search(ctx, &visionv1.SearchRequest{
				Query:    &visionv1.SearchRequest_Image{Image: content},
				Filters:  &visionv1.SearchFilters{Metadata: metadata},
				PageSize: 10,
			})
			if err == nil && !hasHit(found, image.Name) {
				report.Failed(image.Name, caller.Failure{Code: codes.NotFound, Reason: "NOT_IN_SEARCH"})
				cancel()
				continue
			}
		}
		cancel()
		report.Call(image.Name, err)
	}
	report.Exit()
}

func hasHit(response *visionv1.SearchResponse, id string) bool {
	for _, hit := range response.GetHits() {
		if hit.GetId() == id {
			return true
		}
	}
	return false
}
