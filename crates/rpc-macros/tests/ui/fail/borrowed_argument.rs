#[keel::service]
trait Echo {
    async fn echo(&self, text: &str) -> String;
}

fn main() {}
