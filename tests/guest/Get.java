// A Java 11+ HttpClient GET with the placeholder header, run as a single-file program
// (`java Get.java URL NAME`). It prints one `workload: NAME ...` line and never sets a trust
// store or proxy itself: whatever works, works through the JVM's defaults.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Get {
    public static void main(String[] args) {
        String name = args[1];
        try {
            HttpClient client = HttpClient.newBuilder()
                    .connectTimeout(Duration.ofSeconds(120))
                    .build();
            HttpRequest req = HttpRequest.newBuilder(URI.create(args[0]))
                    .header("Authorization", "Bearer " + System.getenv("API_KEY"))
                    .timeout(Duration.ofSeconds(300))
                    .build();
            HttpResponse<String> r = client.send(req, HttpResponse.BodyHandlers.ofString());
            System.out.println("workload: " + name + " status=" + r.statusCode()
                    + " out=" + r.body().trim());
        } catch (Exception e) {
            System.out.println("workload: " + name + " error=" + e);
        }
    }
}
